"""Evaluation metrics: Frechet distance over pluggable features (FID with Inception), improved
precision / recall, cached reference statistics, and model-call / wall-clock accounting.

    from fewstep.metrics import InceptionFID, extract_features, frechet_distance_from_features
    net = InceptionFID()                       # local weights only; clear error if missing
    fid = frechet_distance_from_features(extract_features(net, real), extract_features(net, fake))

scipy is optional (used for the matrix square root when installed).
"""

from .cache import (
    cache_key,
    cached_statistics,
    default_cache_dir,
    load_statistics,
    save_statistics,
    statistics_path,
)
from .features import (
    FeatureExtractor,
    InceptionFID,
    MissingWeightsError,
    PixelFeatures,
    extract_features,
    find_inception_weights,
)
from .classifier import SHIPPED_CLASSIFIERS, ClassifierFeatures, SmallClassifier
from .frechet import feature_statistics, frechet_distance, frechet_distance_from_features, trace_sqrt_product
from .precision_recall import PrecisionRecall, knn_radii, manifold_coverage, precision_recall
from .timing import CallCounter, Stopwatch, synchronize, time_per_sample

__all__ = [
    # offline extractors shipped with the package
    "ClassifierFeatures", "SmallClassifier", "SHIPPED_CLASSIFIERS",
    # frechet
    "feature_statistics", "frechet_distance", "frechet_distance_from_features", "trace_sqrt_product",
    # features
    "FeatureExtractor", "InceptionFID", "MissingWeightsError", "PixelFeatures", "extract_features",
    "find_inception_weights",
    # precision / recall
    "PrecisionRecall", "knn_radii", "manifold_coverage", "precision_recall",
    # cache
    "cache_key", "cached_statistics", "default_cache_dir", "load_statistics", "save_statistics",
    "statistics_path",
    # timing
    "CallCounter", "Stopwatch", "synchronize", "time_per_sample",
]
