from .dataset import ADLXDataset, DataCollator, DataError, DataIssueLog, read_records
from .store import FeatureStore, pack_folder

__all__ = ["ADLXDataset", "DataCollator", "DataError", "DataIssueLog", "FeatureStore", "pack_folder", "read_records"]
