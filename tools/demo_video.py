#!/usr/bin/env python
"""Run a detector on a video file or a webcam and write the annotated video.

    python tools/demo_video.py --config-file configs/X.yaml --input clip.mp4 --output annotated.mp4 \
        [--weights model_final.pth] [--score-threshold 0.3] [--max-frames N] [--batch-size B] KEY VALUE ...
    python tools/demo_video.py --config-file configs/X.yaml --webcam 0 --output webcam.mp4 --max-frames 300

Built on :class:`maskrcnn_benchmark.engine.predictor.Predictor` (weights: --weights, else MODEL.WEIGHT).
Output containers: ``.mp4`` (codec mp4v) or ``.avi`` (MJPG), both available in opencv-python-headless;
the file appears (atomically) when the video is finished. ``--max-frames`` stops early (needed for a
webcam unless you interrupt with Ctrl-C: an interrupt during detection still finishes the file).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402

from maskrcnn_benchmark.utils.io import fsync_dir  # noqa: E402
from maskrcnn_benchmark.utils.visualize import draw_detections  # noqa: E402

logger = logging.getLogger("maskrcnn_benchmark.demo_video")

FOURCC = {".mp4": "mp4v", ".avi": "MJPG"}


def open_capture(source) -> "cv2.VideoCapture":
    """``cv2.VideoCapture`` of a video file (str) or a webcam index (int); clear errors when it fails."""
    if isinstance(source, str) and not os.path.isfile(source):
        raise FileNotFoundError(f"input video not found: {source}")
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        what = f"webcam {source}" if isinstance(source, int) else f"video file {source}"
        raise RuntimeError(f"OpenCV cannot open {what} (not a video, an unsupported codec, or no such device)")
    return capture


def annotate_video(predictor, capture, output: str, fps: float = 0.0, max_frames: int = 0, batch_size: int = 1,
                   score_threshold: float = 0.3) -> Dict[str, object]:
    """Detect on each frame of ``capture`` (``batch_size`` frames per forward pass), draw the detections with
    score >= ``score_threshold`` and write the video to ``output`` (.mp4 / .avi, atomically).

    Returns ``{"frames": written frames, "detections": drawn detections, "output": output}``."""
    ext = os.path.splitext(output)[1].lower()
    if ext not in FOURCC:
        raise ValueError(f"--output must end in {' or '.join(FOURCC)}, got {output!r}")
    fps = fps or capture.get(cv2.CAP_PROP_FPS) or 30.0
    if not fps or fps != fps or fps <= 0:  # some webcams report 0 or NaN
        fps = 30.0
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(output) + ".", suffix=".tmp" + ext, dir=directory)
    os.close(fd)
    writer = None
    frames, drawn = 0, 0
    try:
        done = False
        while not done:
            batch = []
            while len(batch) < batch_size and not (max_frames and frames + len(batch) >= max_frames):
                ok, frame = capture.read()
                if not ok:
                    done = True
                    break
                batch.append(frame)
            if max_frames and frames + len(batch) >= max_frames:
                done = True
            if not batch:
                break
            if writer is None:
                h, w = batch[0].shape[:2]
                writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*FOURCC[ext]), float(fps), (w, h))
                if not writer.isOpened():
                    raise RuntimeError(f"OpenCV cannot write {ext} video ({FOURCC[ext]}) to {output}")
            try:
                detections = predictor(batch)
            except KeyboardInterrupt:  # Ctrl-C (webcam): finish the file with the frames so far
                logger.warning("interrupted: finishing %s after %d frames", output, frames)
                break
            for frame, det in zip(batch, detections):
                keep = det.scores >= score_threshold
                writer.write(draw_detections(frame, det.boxes[keep], det.labels[keep], det.scores[keep],
                                             predictor.class_names))
                frames += 1
                drawn += int(keep.sum())
            if frames and frames % 100 == 0:
                logger.info("%d frames", frames)
        if writer is None:
            raise RuntimeError("the input has no frames to read")
        writer.release()
        writer = None
        os.replace(tmp, output)
        fsync_dir(directory)
    finally:
        if writer is not None:
            writer.release()
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.info("wrote %d frames (%d detections >= %.2f) to %s", frames, drawn, score_threshold, output)
    return {"frames": frames, "detections": drawn, "output": output}


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    from maskrcnn_benchmark.engine.predictor import Predictor
    from maskrcnn_benchmark.utils.logger import setup_logger

    parser = argparse.ArgumentParser(description="Draw detections on a video or webcam stream")
    parser.add_argument("--config-file", default="", metavar="FILE")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="input video file")
    source.add_argument("--webcam", type=int, help="webcam index (0 = the first camera)")
    parser.add_argument("--output", default="annotated.mp4", help="output video (.mp4 or .avi)")
    parser.add_argument("--weights", default="", help="weights (default: MODEL.WEIGHT)")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: MODEL.DEVICE if available)")
    parser.add_argument("--score-threshold", type=float, default=0.3)
    parser.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0: all)")
    parser.add_argument("--batch-size", type=int, default=1, help="frames per forward pass")
    parser.add_argument("--fps", type=float, default=0.0, help="output frame rate (default: the input's, else 30)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.max_frames < 0 or args.batch_size < 1:
        parser.error("--max-frames must be >= 0 and --batch-size >= 1")
    if os.path.splitext(args.output)[1].lower() not in FOURCC:
        parser.error(f"--output must end in {' or '.join(FOURCC)}, got {args.output!r}")
    setup_logger("maskrcnn_benchmark", None, 0)
    capture = open_capture(args.input if args.input is not None else args.webcam)
    try:
        predictor = Predictor(args.config_file, args.weights, opts=args.opts, device=args.device)
        return annotate_video(predictor, capture, args.output, args.fps, args.max_frames, args.batch_size,
                              args.score_threshold)
    finally:
        capture.release()


if __name__ == "__main__":
    from maskrcnn_benchmark.utils.errors import run_tool  # user-input errors: status 2, no traceback

    run_tool(main)
