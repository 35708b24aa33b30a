"""Evaluation metrics and reports against hand-computed values."""
import json
import os

import numpy as np
import pytest

from jax_asc.eval import metrics, report


def test_metrics_by_hand():
  classes = ["x", "y"]
  devices = ["a", "b", "s1", "s4"]
  labels = np.array([0, 0, 0, 1, 1, -1])
  device = np.array([0, 1, 2, 3, 3, 0])
  logits = np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0], [5.0, 0.0]])
  m = metrics.classification_metrics(logits, labels, device, classes, devices)
  assert m["count"] == 5                                  # the unlabelled row is not scored
  assert m["accuracy"] == pytest.approx(3 / 5)
  assert m["per_class"] == {"x": pytest.approx(2 / 3), "y": pytest.approx(1 / 2)}
  assert m["macro_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
  assert m["per_device"] == {"a": 1.0, "b": 1.0, "s1": 0.0, "s4": 0.5}
  assert m["device_groups"] == {"real": 1.0, "seen": 0.0, "unseen": 0.5}
  assert m["confusion"] == [[2, 1], [1, 1]]
  p = np.exp(logits[:5]) / np.exp(logits[:5]).sum(1, keepdims=True)
  assert m["log_loss"] == pytest.approx(-np.mean(np.log(p[np.arange(5), labels[:5]])))
  summary = metrics.scalar_summary(m, "test")
  assert summary["test/group_unseen"] == 0.5 and "test/macro_accuracy" in summary


def test_report_files(tmp_path):
  m = metrics.classification_metrics(np.eye(3) * 4, np.arange(3), np.zeros(3, int),
                                     ["p", "q", "r"], ["a"])
  paths = report.write(m, ["p", "q", "r"], str(tmp_path), "test")
  assert json.load(open(paths["json"]))["accuracy"] == 1.0
  table = open(paths["md"]).read()
  assert "| a | real | acc | macro acc | log loss |" in table and "100.00" in table
  assert os.path.getsize(paths["png"]) > 1000
