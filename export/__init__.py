"""PyTorch -> ONNX -> TensorFlow (onnx2tf) -> TFLite exporter, installed as ``ssd_mnv1.export``.

Run as ``python -m ssd_mnv1.export``. Everything here needs the ``export`` extra; nothing in the
training path imports it.
"""
