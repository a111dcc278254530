"""ADL-X curation from NTU RGB+D 120 (docs/design.md#curation): crops, stitching, captions, descriptions, QA."""
