"""Pose features for LLAVIDAL: a skeleton encoder, its SkeletonCLIP training and feature extraction
(docs/design.md#pose-and-object-features).

- :mod:`.configuration` — :class:`PoseEncoderConfig` (width 216 = 24 × 9 heads, temporal stride 4, tokens).
- :mod:`.graph` — the 25-joint NTU / Kinect v2 skeleton: bones, hop distances, body parts.
- :mod:`.modeling` — :class:`PoseEncoder` (skeletons ``[N, 3, T, 25, M]`` → tokens ``[N, T/4, 216]``) and
  :class:`SkeletonCLIP` (encoder + projection to the CLIP text space + learned temperature).
- :mod:`.data` — the NTU skeleton folder as a dataset, the cross-subject / cross-setup / zero-shot splits.
- :mod:`.train` — ``llavidal pose train``; :mod:`.extract` — ``llavidal extract-pose``; :mod:`.cli` — the commands.

Importing this package is cheap (no torch); the submodules import torch.
"""
