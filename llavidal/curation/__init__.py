"""ADL-X curation from NTU RGB+D 120 (SPEC section 10): crops, stitching, captions, descriptions, QA."""
