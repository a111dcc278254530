"""Object features: ``[n, 8, 512]`` per video — n tracked objects × 8 frames × a CLIP image embedding of the object's
crop (docs/design.md#pose-and-object-features). The release published only the feature files; this package makes them
from videos plus detections (JSON files, or a pluggable detector).

- :mod:`.detections`: the detection JSON schema, its validation, and the detector registry.
- :mod:`.track`: linking detections over frames (IoU + label, Hungarian or greedy) and choosing the objects.
- :mod:`.embed`: 8 frames per track, square crops, ``CLIPVisionModelWithProjection`` image embeddings.
- :mod:`.extract`: the resumable folder job behind ``llavidal extract-objects``.

Only numpy is imported here; torch and transformers load when embedding starts.
"""
from .detections import (
    Detection,
    DetectionError,
    DetectionSource,
    Detector,
    VideoDetections,
    make_detector,
    parse_video_detections,
    register_detector,
    registered_detectors,
    video_id,
)
from .embed import crop_box, sample_positions
from .extract import ObjectExtractConfig, extract_objects
from .track import Track, TrackConfig, TrackStats, iou_matrix, link_tracks, select_tracks

__all__ = [
    "Detection", "DetectionError", "DetectionSource", "Detector", "ObjectExtractConfig", "Track", "TrackConfig",
    "TrackStats", "VideoDetections", "crop_box", "extract_objects", "iou_matrix", "link_tracks", "make_detector",
    "parse_video_detections", "register_detector", "registered_detectors", "sample_positions", "select_tracks",
    "video_id",
]
