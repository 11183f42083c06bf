"""Pre-training data curation (docs/curation.md): filters, MinHash dedup, safety and quality, teacher scoring."""

from conan_embed.curate.curate_config import CurateConfig, curate_config_from_dict, load_curate_config
from conan_embed.curate.dedup import DedupStage, NearDuplicateDetector
from conan_embed.curate.pipeline import Curation, build_row_stages, curate
from conan_embed.curate.curation_record import Record
from conan_embed.curate.stage_interface import Classifier, Filter, Stage

__all__ = ["Classifier", "CurateConfig", "Curation", "DedupStage", "Filter", "NearDuplicateDetector", "Record",
           "Stage", "build_row_stages", "curate", "curate_config_from_dict", "load_curate_config"]
