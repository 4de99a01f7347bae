"""Sample-quality metrics: Fréchet Video Distance (I3D features), per-frame FID (Inception
features), the Fréchet distance they share, and the motion-coherence scores of videos of a
moving shape. Network weights are read from a path or downloaded on first use, never at import."""

from .coherence import Criteria, FrameStats, coherent_videos, motion_coherence, wilson_interval
from .distances import METRICS, VideoMetrics, frame_fid, frechet_video_distance
from .frechet import frechet_distance, frechet_distance_of, gaussian_statistics
from .i3d import InceptionI3d
from .networks import I3DFeatures, InceptionFeatures

__all__ = [
    "Criteria", "FrameStats", "coherent_videos", "motion_coherence", "wilson_interval",
    "METRICS", "VideoMetrics", "frame_fid", "frechet_video_distance", "frechet_distance", "frechet_distance_of", "gaussian_statistics",
    "InceptionI3d", "I3DFeatures", "InceptionFeatures",
]  # fmt: skip
