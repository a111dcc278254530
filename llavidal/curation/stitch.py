"""``llavidal curate stitch-map`` and ``llavidal curate stitch``: temporal stitching (docs/design.md#curation, step 2).

**The map.** ``{stitched_name: [clip file, ...]}``, clips in playing order, names ``{PPP}_video_{NNN}`` (performer,
then a running number per performer, both zero-padded to 3 digits). Per performer (in performer order):

1. semantic videos: for each group of :data:`ADL_GROUPS` (in order), the group's actions that the performer has an
   unused clip for, in the group's order (a natural order: sit down before stand up), if there are at least
   ``min_actions`` of them — one video per group, so 2..7 actions (groups hold at most 7);
2. random videos: while at least ``min_actions`` distinct actions still have unused clips, a size k drawn uniformly
   from ``min_actions..max_actions`` (capped by the actions left), k distinct actions drawn at random, in random
   order, one unused clip each.

Invariants (tested over seeds): every video holds clips of ONE performer; no action repeats within a video; no clip
is used twice in the map — and, unless ``reuse_views``, no *performance* either: the 1-3 camera views of one
recording (same setup, performer, replication, action) count as one clip, a random view standing for it, so no
video shows the same moment twice from another angle; every random video has ``min..max`` actions and every group
video ``min..7``; the map is a function of (clip list, seed, options) only (each performer has its own random
stream seeded by ``(seed, performer)``, so adding a performer changes nothing for the others). Clips left over (an
action with more performances than the others) are counted per performer in ``<map>.manifest.json``.

**The videos.** ``stitch`` joins the clips of each map entry, in order, into one ``{name}.mp4`` with PyAV (no
moviepy). Crops written by one ``curate crop`` run share codec, size, frame rate and codec headers, so their
compressed packets are copied one after the other, retimed (``--mode auto``, the default): lossless, and ~100x
faster than re-encoding. Clips that differ (or ``--mode reencode``) are decoded and encoded as H.264 at the first
clip's frame rate and size (a clip of another size is scaled, counted). ``actions.json`` = ``{name: {"actions": [official NTU action names in order], "sentence": "..."}}`` for
every video that exists, the input of the caption / description / QA steps. Resumable (existing videos are skipped),
atomic, ``stitch_manifest.json`` + ``failures.jsonl``: a missing or corrupt clip fails its video only.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..io_utils import append_jsonl, atomic_path, atomic_write_json, remove_stale_temporaries
from .ntu import NTU_ACTIONS, NTUName, action_name

MANIFEST = "stitch_manifest.json"
FAILURES = "failures.jsonl"
ACTIONS = "actions.json"
CLIP_SUFFIXES = ("_rgb.avi", "_rgb.mp4")

# Semantic groups of daily-living actions (NTU action ids, 1-based), each in a natural playing order, at most 7.
# Our own grouping; an action may sit in more than one group, and actions outside every group still appear in the
# random videos.
ADL_GROUPS: dict[str, tuple[int, ...]] = {
    "eating and drinking": (78, 1, 2, 79, 103),          # open bottle, drink water, eat meal, sniff, yawn
    "grooming": (3, 4, 37, 85, 86, 68, 105),             # brush teeth/hair, wipe face, cream face/hand, flick hair, blow nose
    "dressing": (14, 15, 16, 17, 20, 21),                # jacket on/off, shoe on/off, hat on/off
    "accessories": (18, 19, 61, 62, 87, 88),             # glasses, headphones, bag on/off
    "reading and writing": (11, 12, 73, 13, 82, 76, 30),  # read, write, staple, tear, fold, cut paper, type
    "phone and gadgets": (28, 29, 32, 33, 84),           # phone call, play with phone, selfie, check time, magic cube
    "handling objects": (6, 5, 7, 91, 90, 89, 92),       # pick up, drop, throw, box, bag out/in, heavy objects
    "sitting and resting": (8, 104, 103, 9, 80),         # sit down, stretch, yawn, stand up, squat down
    "feeling unwell": (41, 44, 45, 46, 47, 48, 49),      # sneeze, head/chest/back/neck ache, nausea, fan self
    "losing balance": (42, 43, 9),                       # staggering, falling, standing up
    "exercise": (99, 26, 27, 97, 98, 100, 101),          # run on the spot, hop, jump, arm circles/swings, butt kicks, toe touch
    "greeting and gestures": (23, 35, 38, 39, 69, 71, 72),  # wave, nod/bow, salute, palms together, thumb up, ok, victory
    "expressing feelings": (10, 22, 95, 36, 67, 70, 93),  # clap, cheer up, hands up, shake head, hush, thumb down, fist
    "hand activities": (34, 74, 81, 77, 75, 83, 66),     # rub hands, count money, toss coin, snap, cut nails, ball up paper, juggle
    "ball games": (64, 63, 65, 24, 102),                 # bounce ball, shoot basket, tennis swing, kick something, side kick
    "with another person": (59, 58, 56, 118, 117, 55, 60),  # walk towards, handshake, give, exchange, whisper, hug, walk apart
    "helping each other": (119, 114, 53, 112, 113, 115, 116),  # support, carry together, pat on back, high-five, cheers, photo, follow
    "conflict": (54, 50, 52, 51, 57, 109, 111),          # point finger at, punch, push, kick, touch pocket, grab stuff, step on foot
    "threats": (107, 110, 106, 108),                     # knife, gun, hit with something, knock over
    "everyday moments": (25, 31, 94, 96, 120, 40),       # reach into pocket, point at something, throw up cap, cross arms, rock-paper-scissors, stop
}
GROUP_MAX = 7


def _check_groups() -> None:
    for name, ids in ADL_GROUPS.items():
        assert len(ids) == len(set(ids)) and 1 <= len(ids) <= GROUP_MAX, name
        assert all(1 <= a <= len(NTU_ACTIONS) for a in ids), name


_check_groups()


# ---------------------------------------------------------------------------------------------------- the map
def collect_clips(folder) -> tuple[list[str], list[str]]:
    """Clip file names (``<stem>_rgb.avi`` / ``.mp4``) in ``folder`` (an NTU root's ``rgb/`` or a crop folder),
    and the names of other files that look like clips but do not parse (reported)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    clips, bad = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or not p.name.endswith(CLIP_SUFFIXES):
            continue
        try:
            NTUName.parse(p.name)
        except ValueError:
            bad.append(p.name)
            continue
        clips.append(p.name)
    return clips, bad


def _take(pool: dict[int, list[list[str]]], action: int, rng) -> str:
    """Pop one unused performance of ``action`` (a random camera view of it); drop the action when none is left."""
    views = pool[action].pop()
    if not pool[action]:
        del pool[action]
    return views[int(rng.integers(len(views)))]


def build_stitch_map(clips, seed: int = 0, min_actions: int = 2, max_actions: int = 5,
                     reuse_views: bool = False, groups: dict[str, tuple[int, ...]] | None = None
                     ) -> tuple[dict[str, list[str]], dict]:
    """The stitching map of the module doc from clip file names; returns ``(map, stats)``."""
    if not 1 <= min_actions <= max_actions:
        raise ValueError(f"need 1 <= min_actions <= max_actions, got {min_actions}..{max_actions}")
    groups = ADL_GROUPS if groups is None else groups
    if len(set(clips)) != len(clips):
        raise ValueError("the clip list holds duplicate file names")
    names = {c: NTUName.parse(c) for c in clips}
    # performer -> action -> units (a unit: the clips that may stand for one performance)
    by_perf: dict[int, dict[int, list[list[str]]]] = defaultdict(lambda: defaultdict(list))
    if reuse_views:
        for c in sorted(clips):
            by_perf[names[c].performer][names[c].action].append([c])
    else:
        perf: dict[tuple, list[str]] = defaultdict(list)
        for c in sorted(clips):
            n = names[c]
            perf[(n.performer, n.action, n.setup, n.replication)].append(c)
        for (p, a, _, _), views in sorted(perf.items()):
            by_perf[p][a].append(views)
    out: dict[str, list[str]] = {}
    stats = {"performers": len(by_perf), "clips": len(clips), "group_videos": 0, "random_videos": 0,
             "units_left_over": {}, "videos_per_performer": {}}
    for p in sorted(by_perf):
        rng = np.random.default_rng([seed, p])
        pool = {a: [units[i] for i in rng.permutation(len(units))] for a, units in sorted(by_perf[p].items())}
        videos: list[list[str]] = []
        for ids in groups.values():
            avail = [a for a in ids if a in pool]
            if len(avail) >= min_actions:
                videos.append([_take(pool, a, rng) for a in avail])
                stats["group_videos"] += 1
        while len(pool) >= min_actions:
            k = min(int(rng.integers(min_actions, max_actions + 1)), len(pool))
            actions = sorted(pool)
            chosen = [actions[i] for i in rng.choice(len(actions), size=k, replace=False)]
            videos.append([_take(pool, a, rng) for a in chosen])
            stats["random_videos"] += 1
        for i, v in enumerate(videos, 1):
            out[f"{p:03d}_video_{i:03d}"] = v
        stats["videos_per_performer"][f"{p:03d}"] = len(videos)
        left = sum(len(u) for u in pool.values())
        if left:
            stats["units_left_over"][f"{p:03d}"] = left
    stats["videos"] = len(out)
    return out, stats


def check_stitch_map(smap: dict[str, list[str]], min_actions: int = 1, max_actions: int = GROUP_MAX,
                     reuse_views: bool = False) -> None:
    """Raise ValueError naming the video when a map breaks an invariant of the module doc."""
    seen: dict[object, str] = {}
    for name, clips in smap.items():
        if not isinstance(clips, list) or not clips:
            raise ValueError(f"{name}: expected a non-empty list of clip files, got {clips!r}")
        parsed = [NTUName.parse(c) for c in clips]
        perf = {n.performer for n in parsed}
        if len(perf) != 1:
            raise ValueError(f"{name}: clips of several performers {sorted(perf)}")
        if name[:3] != f"{perf.pop():03d}" or "_video_" not in name:
            raise ValueError(f"{name}: name is not {{PPP}}_video_{{NNN}} of its performer")
        acts = [n.action for n in parsed]
        if len(set(acts)) != len(acts):
            raise ValueError(f"{name}: an action repeats: {acts}")
        if not min_actions <= len(clips) <= max_actions:
            raise ValueError(f"{name}: {len(clips)} clips, expected {min_actions}..{max_actions}")
        for n, c in zip(parsed, clips):
            key = n.stem if reuse_views else (n.setup, n.performer, n.replication, n.action)
            if key in seen:
                raise ValueError(f"{name}: {c} repeats a clip (or a view of the same performance) already used "
                                 f"in {seen[key]}")
            seen[key] = name


def load_stitch_map(path) -> dict[str, list[str]]:
    import json

    path = Path(path)
    try:
        smap = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: stitching map not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(smap, dict) or not all(isinstance(v, list) and all(isinstance(c, str) for c in v)
                                             for v in smap.values()):
        raise ValueError(f"{path}: expected a JSON object {{stitched_name: [clip file, ...]}}")
    for name, clips in smap.items():
        for c in clips:
            try:
                NTUName.parse(c)
            except ValueError as e:
                raise ValueError(f"{path}: entry '{name}': {e}") from None
    return smap


def action_sentence(actions: list[str]) -> str:
    """One natural sentence listing the actions in order."""
    if not actions:
        raise ValueError("no actions")
    if len(actions) == 1:
        return f"The person in the video performs one action: {actions[0]}."
    listed = ", then ".join(actions[:-1]) + f", and finally {actions[-1]}"
    return f"The person in the video performs {len(actions)} actions, in this order: {listed}."


def describe_video(clips: list[str]) -> dict:
    acts = [action_name(NTUName.parse(c).action) for c in clips]
    return {"actions": acts, "sentence": action_sentence(acts)}


# ---------------------------------------------------------------------------------------------------- the videos
def resolve_clip(folder: Path, entry: str) -> Path | None:
    """The file a map entry names: the exact name, else the same stem with the other clip suffix (the released map
    names ``_rgb.avi``; ``crop --format mp4`` writes ``_rgb.mp4``)."""
    p = folder / entry
    if p.is_file():
        return p
    stem = NTUName.parse(entry).stem
    for suffix in CLIP_SUFFIXES:
        q = folder / f"{stem}{suffix}"
        if q.is_file():
            return q
    return None


STITCH_MODES = ("auto", "copy", "reencode")


class CannotCopy(Exception):
    """The clips cannot be joined by copying their packets (different parameters, or frames out of order)."""


def _copy_params(stream) -> tuple:
    cc = stream.codec_context
    return (cc.name, cc.width, cc.height, cc.pix_fmt, stream.time_base, bytes(cc.extradata or b""))


def stitch_copy(clip_paths: list[Path], out_path: Path) -> dict:
    """Join the clips by copying their compressed packets into one MP4 (no decoding, no quality loss), retimed
    one after the other. Only for clips with identical codec, size, pixel format, time base and codec headers and
    no frame reordering (pts == dts: our crops); raises :class:`CannotCopy` otherwise, VideoReadError for a clip
    that cannot be opened. Frames are counted as packets (one frame per packet for these streams)."""
    import av

    from .crop import open_video

    params, fps = None, None
    for path in clip_paths:
        container, stream, clip_fps, _, _ = open_video(path)
        try:
            p = _copy_params(stream)
        finally:
            container.close()
        if params is None:
            params, fps = p, clip_fps
        elif p != params:
            raise CannotCopy(f"{path}: stream parameters differ from the first clip's "
                             f"({p[:5]} vs {params[:5]}, or other codec headers)")
    out_path = Path(out_path)
    counts = []
    with atomic_path(out_path, out_path.suffix) as tmp:
        with av.open(str(tmp), mode="w") as out:
            first, _, _, _, _ = open_video(clip_paths[0])
            try:
                ostream = out.add_stream_from_template(first.streams.video[0])
            finally:
                first.close()
            offset = 0
            for path in clip_paths:
                container, stream, _, _, _ = open_video(path)
                n, end = 0, offset
                try:
                    for pkt in container.demux(stream):
                        if pkt.size == 0:
                            continue  # the demuxer's final flush packet
                        if pkt.pts is None or pkt.dts is None or pkt.pts != pkt.dts:
                            raise CannotCopy(f"{path}: packets without timestamps or reordered frames")
                        pkt.pts += offset
                        pkt.dts += offset
                        end = max(end, pkt.pts + (pkt.duration or 1))
                        pkt.stream = ostream
                        out.mux(pkt)
                        n += 1
                finally:
                    container.close()
                if n == 0:
                    from ..video.io import VideoReadError

                    raise VideoReadError(f"{path}: no video frames")
                counts.append(n)
                offset = end
    return {"frames": sum(counts), "clip_frames": counts, "frames_resized": 0, "fps": [round(fps, 3)],
            "size": [params[1], params[2]], "mode": "copy"}


def stitch_reencode(clip_paths: list[Path], out_path: Path, quality: int | None = None,
                    preset: str = "veryfast") -> dict:
    """Decode the clips in order and encode their frames into one H.264 ``out_path`` at the first clip's frame rate
    and size (other sizes are scaled, counted). Raises VideoReadError naming the clip that cannot be read."""
    import av

    from ..video.io import VideoReadError
    from .crop import VideoWriter, open_video

    counts, resized, fps_seen = [], 0, set()
    writer = None
    try:
        for path in clip_paths:
            container, stream, fps, w, h = open_video(path)
            fps_seen.add(round(fps, 3))
            n = 0
            try:
                if writer is None:
                    writer = VideoWriter(out_path, w, h, fps, "libx264", quality, preset)
                    size = (w, h)
                for frame in container.decode(stream):
                    if (frame.width, frame.height) != size:
                        resized += 1  # counted: a clip of another size is scaled to the first clip's
                    if (frame.width, frame.height) != (writer.width, writer.height) or frame.format.name != "yuv420p":
                        frame = frame.reformat(width=writer.width, height=writer.height, format="yuv420p",
                                               interpolation="BILINEAR")
                    writer.write(frame)
                    n += 1
            except VideoReadError:
                raise
            except (av.error.FFmpegError, ValueError, OSError) as e:
                raise VideoReadError(f"{path}: decoding failed at frame {n} ({type(e).__name__}: {e})") from None
            finally:
                container.close()
            if n == 0:
                raise VideoReadError(f"{path}: no video frames")
            counts.append(n)
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return {"frames": sum(counts), "clip_frames": counts, "frames_resized": resized,
            "fps": sorted(fps_seen), "size": list(size), "mode": "reencode"}


def stitch_video(clip_paths: list[Path], out_path: Path, quality: int | None = None, preset: str = "veryfast",
                 mode: str = "auto") -> dict:
    """Concatenate the clips in order into ``out_path``. ``mode``: ``copy`` (packets copied, see
    :func:`stitch_copy`), ``reencode`` (decoded and encoded as H.264), ``auto`` (copy when the clips allow it, else
    re-encode). Returns frame counts and the mode used."""
    if mode not in STITCH_MODES:
        raise ValueError(f"mode must be one of {STITCH_MODES}, got {mode!r}")
    reason = None
    if mode in ("auto", "copy"):
        try:
            return stitch_copy(clip_paths, out_path)
        except CannotCopy as e:
            if mode == "copy":
                raise ValueError(f"cannot stitch by copying: {e}") from None
            reason = str(e)
    rec = stitch_reencode(clip_paths, out_path, quality, preset)
    if reason:
        rec["copy_refused"] = reason
    return rec


def stitch_all(crops, map_path, out_dir, quality: int | None = None, preset: str = "veryfast",
               progress: bool = True, names: list[str] | None = None, mode: str = "auto") -> dict:
    """Stitch every entry of the map (resumable); writes the videos, ``actions.json`` and the manifest."""
    crops, out_dir = Path(crops), Path(out_dir)
    if not crops.is_dir():
        raise FileNotFoundError(f"{crops}: no such clip folder")
    smap = load_stitch_map(map_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)  # what a killed run was writing; its video is redone below
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    t0 = time.perf_counter()
    todo = list(smap) if names is None else [n for n in smap if n in set(names)]
    done, skipped, failures, frames, notes = 0, 0, [], 0, []
    modes = {"copy": 0, "reencode": 0}
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="stitch", unit="video")
    for name in todo:
        out = out_dir / f"{name}.mp4"
        if out.is_file():
            skipped += 1
        else:
            paths = [resolve_clip(crops, c) for c in smap[name]]
            missing = [c for c, p in zip(smap[name], paths) if p is None]
            try:
                if missing:
                    raise FileNotFoundError(f"{crops}: clip(s) not found: {', '.join(missing)}")
                rec = stitch_video(paths, out, quality, preset, mode)
                frames += rec["frames"]
                modes[rec["mode"]] += 1
                done += 1
                if len(rec["fps"]) > 1 or rec["frames_resized"] or rec.get("copy_refused"):
                    notes.append({"name": name, "fps": rec["fps"], "frames_resized": rec["frames_resized"],
                                  "copy_refused": rec.get("copy_refused")})
            except Exception as e:  # noqa: BLE001 - recorded per video; the run goes on
                failures.append({"name": name, "clips": smap[name], "error": f"{type(e).__name__}: {e}",
                                 "run": started})
                append_jsonl(out_dir / FAILURES, failures[-1:])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    actions = {n: describe_video(smap[n]) for n in smap if (out_dir / f"{n}.mp4").is_file()}
    atomic_write_json(out_dir / ACTIONS, actions)
    seconds = time.perf_counter() - t0
    manifest = {"step": "stitch", "crops": str(crops), "map": str(map_path), "output": str(out_dir),
                "last_run": started, "mode": mode,
                "reencode": {"codec": "libx264", "crf": 18 if quality is None else quality, "preset": preset},
                "this_run": {"videos_in_map": len(smap), "stitched": done, "skipped_existing": skipped,
                             "failed": len(failures), "frames_written": frames, "seconds": round(seconds, 2),
                             "copied": modes["copy"], "reencoded": modes["reencode"]},
                "videos_done": len(actions), "videos_missing": len(smap) - len(actions),
                "notes_this_run": notes, "failures_this_run": failures}
    atomic_write_json(out_dir / MANIFEST, manifest)
    return manifest


# ---------------------------------------------------------------------------------------------------- CLI
def cmd_stitch_map(args) -> int:
    if bool(args.ntu_root) == bool(args.crops):
        raise SystemExit("error: give exactly one of --ntu-root DIR (clips in DIR/rgb) or --crops DIR")
    folder = Path(args.ntu_root) / "rgb" if args.ntu_root else Path(args.crops)
    clips, bad = collect_clips(folder)
    if not clips:
        raise SystemExit(f"error: {folder}: no NTU clips (<stem>_rgb.avi / _rgb.mp4) found")
    smap, stats = build_stitch_map(clips, seed=args.seed, min_actions=args.min, max_actions=args.max,
                                   reuse_views=args.reuse_views)
    check_stitch_map(smap, min_actions=args.min, max_actions=max(args.max, GROUP_MAX), reuse_views=args.reuse_views)
    out = Path(args.out)
    atomic_write_json(out, smap)
    stats.update({"source": str(folder), "seed": args.seed, "min_actions": args.min, "max_actions": args.max,
                  "reuse_views": args.reuse_views, "unparsed_files": bad})
    atomic_write_json(out.with_name(out.name + ".manifest.json"), stats)
    left = sum(stats["units_left_over"].values())
    print(f"stitch-map: {stats['videos']} videos ({stats['group_videos']} semantic-group, {stats['random_videos']} "
          f"random) from {len(clips)} clips of {stats['performers']} performers; {left} clips/performances left "
          f"over; wrote {out}")
    if bad:
        print(f"stitch-map: ignored {len(bad)} files whose names are not NTU names (see the manifest)")
    return 0


def cmd_stitch(args) -> int:
    m = stitch_all(args.crops, args.map, args.out, quality=args.quality, preset=args.preset,
                   progress=not args.no_progress, mode=args.mode)
    run = m["this_run"]
    print(f"stitch: {run['stitched']} stitched, {run['skipped_existing']} already done, {run['failed']} failed "
          f"({run['seconds']} s); {m['videos_done']}/{run['videos_in_map']} videos in {args.out}")
    for f in m["failures_this_run"][:10]:
        print(f"  failed {f['name']}: {f['error']}")
    return 0 if run["failed"] == 0 else 1


def register_step(steps) -> None:
    p = steps.add_parser("stitch-map", help="which clips make each stitched video: {PPP}_video_{NNN} -> [clips]")
    p.add_argument("--ntu-root", help="NTU root (clips in rgb/)")
    p.add_argument("--crops", help="crop folder from `curate crop`")
    p.add_argument("--out", required=True, help="map JSON to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min", type=int, default=2, help="fewest actions per video (2)")
    p.add_argument("--max", type=int, default=5, help="most actions per random video (5; group videos up to 7)")
    p.add_argument("--reuse-views", action="store_true",
                   help="treat each camera view as its own clip (default: one view per performance)")
    p.set_defaults(func=cmd_stitch_map)

    p = steps.add_parser("stitch", help="concatenate the clips of each map entry into {name}.mp4 + actions.json")
    p.add_argument("--crops", required=True, help="folder holding the clips the map names")
    p.add_argument("--map", required=True, help="stitching map JSON")
    p.add_argument("--out", required=True, help="output folder ({name}.mp4, actions.json, stitch_manifest.json)")
    p.add_argument("--mode", default="auto", choices=STITCH_MODES,
                   help="copy: join the clips' packets (lossless, fast; needs identical streams, e.g. our crops); "
                        "reencode: decode + H.264; auto (default): copy when possible")
    p.add_argument("--quality", type=int, default=None, help="H.264 crf when re-encoding (18)")
    p.add_argument("--preset", default="veryfast", help="x264 preset (veryfast)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_stitch)
