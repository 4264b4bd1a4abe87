/*
 * ssd_postprocess.h: post-processing of an SSD detector's outputs on a microcontroller.
 *
 * Part of the ssd_mnv1 project (Apache-2.0). Portable C99: no malloc, no recursion, no global state;
 * every buffer is the caller's and sized by the macros below.
 *
 * Decode -> clip -> score threshold -> per-class greedy NMS -> top-k cap: the project's deploy
 * post-processing (ssd_mnv1.postprocess, variant "deploy"), detection for detection:
 *   - box = anchor corner + offset * anchor size: x1 = ax1 + tx1 * (ax2 - ax1), likewise each corner;
 *   - clipped to [0, 1] (config.clip);
 *   - a class keeps the anchors whose score is strictly above config.score_threshold;
 *   - candidates are visited by descending score, equal scores in (anchor, class) order; a candidate
 *     is dropped when its IoU with a kept box of the same class is strictly above
 *     config.iou_threshold; the walk stops once config.max_detections boxes are kept.
 * The detections come out by descending score. Compile without floating-point contraction (C99's
 * default; GCC in GNU mode: -ffp-contract=off) to get the host's numbers bit for bit.
 *
 * Tensors are row-major, batch 1: scores [num_anchors][num_columns] (column 0 the background),
 * offsets [num_anchors][4] (t_x1, t_y1, t_x2, t_y2), anchors [num_anchors][4] (x1, y1, x2, y2,
 * normalized). Each one is float32 or int8/uint8 with a scale and zero point (real = scale * (q -
 * zero point), computed as TensorFlow Lite Micro's DEQUANTIZE computes it), so the same call takes a
 * model's float outputs or its int8 ones.
 */
#ifndef SSD_POSTPROCESS_H
#define SSD_POSTPROCESS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Candidates (class scores above the threshold) the workspace holds; beyond it the lowest-ranked
 * ones are left out (ssd_pp_stats.dropped), which changes nothing while max_detections boxes are
 * still kept from those held (ssd_pp_stats.truncated says when it may have). 8 bytes each. */
#ifndef SSD_PP_MAX_CANDIDATES
#define SSD_PP_MAX_CANDIDATES 1024
#endif

/* The most detections one call returns (config.max_detections is capped to it). */
#ifndef SSD_PP_MAX_DETECTIONS
#define SSD_PP_MAX_DETECTIONS 100
#endif

#define SSD_PP_ERROR_ARGUMENT (-1)

typedef enum { SSD_PP_FLOAT32 = 0, SSD_PP_INT8 = 1, SSD_PP_UINT8 = 2 } ssd_pp_type;

/* One of the model's outputs: its data and, for int8/uint8, its quantization. */
typedef struct {
    const void *data;
    ssd_pp_type type;
    float scale;        /* int8/uint8 only */
    int32_t zero_point; /* int8/uint8 only */
} ssd_pp_tensor;

typedef struct {
    float score_threshold; /* a class keeps anchors scoring strictly above it (deploy: 0.5) */
    float iou_threshold;   /* NMS suppresses an IoU strictly above it (deploy: 0.5) */
    int32_t max_detections;  /* all classes together (deploy: 100; at most SSD_PP_MAX_DETECTIONS) */
    int32_t clip;            /* clip boxes to [0, 1] before NMS (deploy: 1) */
} ssd_pp_config;

typedef struct {
    float x1, y1, x2, y2; /* normalized to the input; multiply by the image's width/height */
    float score;
    int32_t class_id;     /* 1-based: score column; class_names[class_id - 1] */
    int32_t anchor;       /* the anchor it was decoded from */
} ssd_pp_detection;

typedef struct {
    int32_t candidates; /* class scores above the threshold */
    int32_t dropped;    /* candidates left out: the workspace was full */
    int32_t truncated;  /* 1 when the dropped candidates may have changed the detections */
} ssd_pp_stats;

/* Scratch memory of one call (SSD_PP_MAX_CANDIDATES * 8 bytes + 8): make it static, not a local. */
typedef struct {
    float score[SSD_PP_MAX_CANDIDATES];
    int32_t key[SSD_PP_MAX_CANDIDATES]; /* anchor * classes + class - 1: the order of equal scores */
} ssd_pp_workspace;

/* The deploy recipe: 0.5, 0.5, 100, clip. */
void ssd_pp_default_config(ssd_pp_config *config);

/* A float32 tensor (for int8/uint8, fill the struct's scale and zero point). */
ssd_pp_tensor ssd_pp_float_tensor(const float *data);

/* sizeof(ssd_pp_workspace) and SSD_PP_MAX_CANDIDATES as compiled (for bindings). */
size_t ssd_pp_workspace_size(void);
int32_t ssd_pp_max_candidates(void);

/*
 * Writes at most min(capacity, config->max_detections, SSD_PP_MAX_DETECTIONS) detections to
 * `detections`, by descending score, and returns their count; SSD_PP_ERROR_ARGUMENT for a NULL
 * pointer, num_columns < 2, num_anchors < 1 or a non-positive int8 scale. `stats` may be NULL.
 */
int32_t ssd_postprocess(const ssd_pp_tensor *scores, const ssd_pp_tensor *offsets, const ssd_pp_tensor *anchors,
                        int32_t num_anchors, int32_t num_columns, const ssd_pp_config *config,
                        ssd_pp_workspace *workspace, ssd_pp_detection *detections, int32_t capacity,
                        ssd_pp_stats *stats);

#ifdef __cplusplus
}
#endif

#endif /* SSD_POSTPROCESS_H */
