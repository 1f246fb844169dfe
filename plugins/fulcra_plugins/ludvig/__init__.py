"""LUDVIG's 3D tasks on uplifted features (thesis §5.4, app. C.1): multi-view segmentation from
scribbles or a reference mask (with or without graph diffusion), open-vocabulary localisation and
segmentation, 3D object selection, object removal/extraction, evaluation protocols (NVOS,
SPIn-NeRF, LERF as extended by LangSplat), the synthetic benchmark, and an interactive API."""

from .editing import extract, remove, save_extracted, save_removed
from .interactive import Selection, Selector
from .localisation import (
    SelectionError,
    SelectionWarning,
    localise,
    render_relevancy,
    sam_prompts,
    segment_3d_selection,
    segment_relevancy,
    select_3d,
)
from .metrics import accuracy, iou, localisation_hit, results_table
from .segmentation import (
    binarise_3d,
    clicks_to_mask,
    render_mask,
    render_scores,
    segment_diffusion,
    segment_sam,
    segment_single_view,
    segment_uplift,
    uplift_mask,
)

__all__ = [
    "Selector",
    "Selection",
    "remove",
    "extract",
    "save_removed",
    "save_extracted",
    "localise",
    "render_relevancy",
    "segment_relevancy",
    "select_3d",
    "segment_3d_selection",
    "sam_prompts",
    "SelectionWarning",
    "SelectionError",
    "iou",
    "localisation_hit",
    "accuracy",
    "results_table",
    "binarise_3d",
    "clicks_to_mask",
    "render_mask",
    "render_scores",
    "segment_diffusion",
    "segment_single_view",
    "segment_uplift",
    "uplift_mask",
    "segment_sam",
]
