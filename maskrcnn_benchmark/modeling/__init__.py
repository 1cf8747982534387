"""Detector building blocks: backbones, heads, assigners, box coding."""
