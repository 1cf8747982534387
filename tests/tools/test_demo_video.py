"""tools/demo_video.py: annotate a tiny generated video with a random-weight detector."""
import importlib.util
import os

import cv2
import numpy as np
import pytest
import torch

from maskrcnn_benchmark.utils.visualize import draw_detections

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL_CONFIG = os.path.join(ROOT, "configs", "atss", "atss_R_18_FPN_small.yaml")
OPTS = ["MODEL.DEVICE", "cpu", "MODEL.ATSS.NUM_CLASSES", "3", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST",
        "96", "MODEL.ATSS.INFERENCE_TH", "0.0", "TEST.DETECTIONS_PER_IMG", "3"]


def _tool():
    spec = importlib.util.spec_from_file_location("tools_demo_video", os.path.join(ROOT, "tools", "demo_video.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read_all(path):
    cap = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames, cap


@pytest.fixture(scope="module")
def video_and_weights(tmp_path_factory):
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.utils.checkpoint import Checkpointer
    from maskrcnn_benchmark.config import setup_cfg

    root = str(tmp_path_factory.mktemp("video"))
    path = os.path.join(root, "in.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 48))
    assert writer.isOpened()
    for i in range(6):
        frame = np.full((48, 64, 3), 40, np.uint8)
        cv2.rectangle(frame, (5 + 4 * i, 8), (30 + 4 * i, 40), (0, 180, 250), -1)
        writer.write(frame)
    writer.release()
    torch.manual_seed(0)
    model = build_detection_model(setup_cfg(SMALL_CONFIG, OPTS))
    weights = Checkpointer(model, save_dir=os.path.join(root, "w"), save_to_disk=True).save("m")
    return path, weights


@pytest.mark.parametrize("ext,batch", [(".mp4", 1), (".avi", 3)])
def test_annotates_frames(video_and_weights, tmp_path, ext, batch):
    from maskrcnn_benchmark.engine.predictor import Predictor

    video, weights = video_and_weights
    out = str(tmp_path / f"annotated{ext}")
    result = _tool().main(["--config-file", SMALL_CONFIG, "--input", video, "--output", out, "--weights", weights,
                           "--max-frames", "4", "--batch-size", str(batch), "--score-threshold", "0.0", *OPTS])
    assert result["frames"] == 4 and result["detections"] == 4 * 3
    frames, cap = _read_all(out)
    assert len(frames) == 4 and frames[0].shape == (48, 64, 3)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temp file left

    # each written frame is the input frame with the predictor's detections drawn (up to codec loss)
    inputs, _ = _read_all(video)
    predictor = Predictor(SMALL_CONFIG, weights, opts=OPTS)
    for frame_in, frame_out in zip(inputs, frames):
        det = predictor(frame_in)
        expected = draw_detections(frame_in, det.boxes, det.labels, det.scores, predictor.class_names)
        to_drawn = np.abs(expected.astype(int) - frame_out).mean()
        to_raw = np.abs(frame_in.astype(int) - frame_out).mean()
        assert to_drawn < 0.5 * to_raw  # the output is the drawn frame (up to codec loss), not the raw one


def test_clear_errors(video_and_weights, tmp_path):
    tool = _tool()
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        tool.main(["--config-file", SMALL_CONFIG, "--input", str(tmp_path / "missing.mp4"), *OPTS])
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(RuntimeError, match="cannot open video file .*bad.mp4"):
        tool.main(["--config-file", SMALL_CONFIG, "--input", str(bad), *OPTS])
    with pytest.raises(SystemExit):
        tool.main(["--config-file", SMALL_CONFIG, "--input", video_and_weights[0], "--output", "x.gif", *OPTS])
