"""Plain-Python box references shared by the tests (independent of the library's tensor code)."""


def iou(a, b) -> float:
    """IoU of two boxes ``[x1, y1, x2, y2]`` (continuous, no "+1"); 0 when the union is 0."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
