/*
 * ssd_postprocess.c: see ssd_postprocess.h. Part of the ssd_mnv1 project (Apache-2.0).
 */
#include "ssd_postprocess.h"

void ssd_pp_default_config(ssd_pp_config *config)
{
    if (config == NULL) {
        return;
    }
    config->score_threshold = 0.5f;
    config->iou_threshold = 0.5f;
    config->max_detections = 100;
    config->clip = 1;
}

ssd_pp_tensor ssd_pp_float_tensor(const float *data)
{
    ssd_pp_tensor t;
    t.data = data;
    t.type = SSD_PP_FLOAT32;
    t.scale = 0.0f;
    t.zero_point = 0;
    return t;
}

size_t ssd_pp_workspace_size(void)
{
    return sizeof(ssd_pp_workspace);
}

int32_t ssd_pp_max_candidates(void)
{
    return SSD_PP_MAX_CANDIDATES;
}

/* Real value of a quantized element q, as TFLM's DEQUANTIZE computes it (double, then float). */
static float pp_dequantize(const ssd_pp_tensor *t, int32_t q)
{
    return (float)((double)t->scale * (double)(q - t->zero_point));
}

static float pp_value(const ssd_pp_tensor *t, size_t i)
{
    switch (t->type) {
    case SSD_PP_INT8:
        return pp_dequantize(t, (int32_t)((const int8_t *)t->data)[i]);
    case SSD_PP_UINT8:
        return pp_dequantize(t, (int32_t)((const uint8_t *)t->data)[i]);
    default:
        return ((const float *)t->data)[i];
    }
}

/* The integer code of element i (int8/uint8 tensors only). */
static int32_t pp_code(const ssd_pp_tensor *t, size_t i)
{
    if (t->type == SSD_PP_INT8) {
        return (int32_t)((const int8_t *)t->data)[i];
    }
    return (int32_t)((const uint8_t *)t->data)[i];
}

static int pp_valid(const ssd_pp_tensor *t)
{
    if (t == NULL || t->data == NULL) {
        return 0;
    }
    if (t->type == SSD_PP_FLOAT32) {
        return 1;
    }
    return (t->type == SSD_PP_INT8 || t->type == SSD_PP_UINT8) && t->scale > 0.0f;
}

/* Candidate a ranks below candidate b: lower score, or the same score and later (anchor, class). */
static int pp_worse(const ssd_pp_workspace *w, int32_t a, int32_t b)
{
    return w->score[a] < w->score[b] || (w->score[a] == w->score[b] && w->key[a] > w->key[b]);
}

static void pp_swap(ssd_pp_workspace *w, int32_t a, int32_t b)
{
    float s = w->score[a];
    int32_t k = w->key[a];
    w->score[a] = w->score[b];
    w->key[a] = w->key[b];
    w->score[b] = s;
    w->key[b] = k;
}

/* Heap of `n` candidates with the lowest-ranked at the root. */
static void pp_sift_down(ssd_pp_workspace *w, int32_t i, int32_t n)
{
    for (;;) {
        int32_t child = 2 * i + 1;
        if (child >= n) {
            return;
        }
        if (child + 1 < n && pp_worse(w, child + 1, child)) {
            child += 1;
        }
        if (!pp_worse(w, child, i)) {
            return;
        }
        pp_swap(w, i, child);
        i = child;
    }
}

static void pp_sift_up(ssd_pp_workspace *w, int32_t i)
{
    while (i > 0) {
        int32_t parent = (i - 1) / 2;
        if (!pp_worse(w, i, parent)) {
            return;
        }
        pp_swap(w, i, parent);
        i = parent;
    }
}

static float pp_clip(float v)
{
    return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
}

static void pp_decode(const ssd_pp_tensor *offsets, const ssd_pp_tensor *anchors, int32_t anchor, int32_t clip,
                      ssd_pp_detection *d)
{
    size_t base = (size_t)anchor * 4u;
    float ax1 = pp_value(anchors, base), ay1 = pp_value(anchors, base + 1);
    float ax2 = pp_value(anchors, base + 2), ay2 = pp_value(anchors, base + 3);
    float w = ax2 - ax1;
    float h = ay2 - ay1;
    float p;
    p = pp_value(offsets, base) * w;
    d->x1 = ax1 + p;
    p = pp_value(offsets, base + 1) * h;
    d->y1 = ay1 + p;
    p = pp_value(offsets, base + 2) * w;
    d->x2 = ax2 + p;
    p = pp_value(offsets, base + 3) * h;
    d->y2 = ay2 + p;
    if (clip) {
        d->x1 = pp_clip(d->x1);
        d->y1 = pp_clip(d->y1);
        d->x2 = pp_clip(d->x2);
        d->y2 = pp_clip(d->y2);
    }
}

static float pp_area(const ssd_pp_detection *d)
{
    float w = d->x2 - d->x1;
    float h = d->y2 - d->y1;
    return w * h;
}

/* IoU of a kept box and a later candidate, in float, in the order torchvision's CPU NMS computes it. */
static float pp_iou(const ssd_pp_detection *kept, float kept_area, const ssd_pp_detection *d, float area)
{
    float xx1 = kept->x1 > d->x1 ? kept->x1 : d->x1;
    float yy1 = kept->y1 > d->y1 ? kept->y1 : d->y1;
    float xx2 = kept->x2 < d->x2 ? kept->x2 : d->x2;
    float yy2 = kept->y2 < d->y2 ? kept->y2 : d->y2;
    float w = xx2 - xx1;
    float h = yy2 - yy1;
    float inter, sum;
    if (w < 0.0f) {
        w = 0.0f;
    }
    if (h < 0.0f) {
        h = 0.0f;
    }
    inter = w * h;
    sum = kept_area + area;
    return inter / (sum - inter);
}

int32_t ssd_postprocess(const ssd_pp_tensor *scores, const ssd_pp_tensor *offsets, const ssd_pp_tensor *anchors,
                        int32_t num_anchors, int32_t num_columns, const ssd_pp_config *config,
                        ssd_pp_workspace *workspace, ssd_pp_detection *detections, int32_t capacity,
                        ssd_pp_stats *stats)
{
    float kept_area[SSD_PP_MAX_DETECTIONS];
    int32_t classes = num_columns - 1;
    int32_t count = 0, dropped = 0, total = 0, kept = 0, limit, a, c, i;
    int32_t qmin = 0;

    if (!pp_valid(scores) || !pp_valid(offsets) || !pp_valid(anchors) || config == NULL || workspace == NULL ||
        (detections == NULL && capacity > 0) || num_columns < 2 || num_anchors < 1 || capacity < 0) {
        return SSD_PP_ERROR_ARGUMENT;
    }
    limit = config->max_detections;
    if (limit > capacity) {
        limit = capacity;
    }
    if (limit > SSD_PP_MAX_DETECTIONS) {
        limit = SSD_PP_MAX_DETECTIONS;
    }

    if (scores->type != SSD_PP_FLOAT32) {
        /* the smallest code whose value passes: then the scan compares integers */
        int32_t lo = scores->type == SSD_PP_INT8 ? -128 : 0;
        qmin = lo + 256;
        for (i = lo; i < lo + 256; ++i) {
            if (pp_dequantize(scores, i) > config->score_threshold) {
                qmin = i;
                break;
            }
        }
    }

    /* 1. candidates, in (anchor, class) order, into a heap that keeps the best SSD_PP_MAX_CANDIDATES */
    for (a = 0; a < num_anchors; ++a) {
        for (c = 1; c <= classes; ++c) {
            size_t at = (size_t)a * (size_t)num_columns + (size_t)c;
            float s;
            if (scores->type == SSD_PP_FLOAT32) {
                s = ((const float *)scores->data)[at];
                if (!(s > config->score_threshold)) {
                    continue;
                }
            } else {
                if (pp_code(scores, at) < qmin) {
                    continue;
                }
                s = pp_value(scores, at);
            }
            ++total;
            if (count < SSD_PP_MAX_CANDIDATES) {
                workspace->score[count] = s;
                workspace->key[count] = a * classes + (c - 1);
                pp_sift_up(workspace, count);
                ++count;
            } else {
                ++dropped;
                /* a later candidate with an equal score ranks below every held one */
                if (s > workspace->score[0]) {
                    workspace->score[0] = s;
                    workspace->key[0] = a * classes + (c - 1);
                    pp_sift_down(workspace, 0, count);
                }
            }
        }
    }

    /* 2. heap sort: the lowest-ranked go to the end, so the array ends up best first */
    for (i = count - 1; i > 0; --i) {
        pp_swap(workspace, 0, i);
        pp_sift_down(workspace, 0, i);
    }

    /* 3. greedy NMS per class, best first, until `limit` boxes are kept */
    for (i = 0; i < count && kept < limit; ++i) {
        ssd_pp_detection d;
        float area;
        int32_t j, suppressed = 0;
        d.anchor = workspace->key[i] / classes;
        d.class_id = workspace->key[i] % classes + 1;
        d.score = workspace->score[i];
        pp_decode(offsets, anchors, d.anchor, config->clip, &d);
        area = pp_area(&d);
        for (j = 0; j < kept; ++j) {
            if (detections[j].class_id == d.class_id &&
                pp_iou(&detections[j], kept_area[j], &d, area) > config->iou_threshold) {
                suppressed = 1;
                break;
            }
        }
        if (!suppressed) {
            detections[kept] = d;
            kept_area[kept] = area;
            ++kept;
        }
    }

    if (stats != NULL) {
        stats->candidates = total;
        stats->dropped = dropped;
        stats->truncated = dropped > 0 && kept < limit;
    }
    return kept;
}
