"""TensorBoard event files, written on the launcher side from what a job reports: scalars and text, with
tensorboard's own event-file writer (no torch, no TensorFlow). Imported lazily, so a run with --no-tensorboard never
loads it. Both job kinds that write here (training, and evaluation into the same run's folder) share this writer."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

TB_DIR = "tb"  # RUN/tb/: what `tensorboard --logdir RUN` (or a folder of runs) shows


class EventWriter:
    """One new event file in `logdir` (TensorBoard merges every file of a folder, so a resumed run adds one)."""

    def __init__(self, logdir: Path):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        Path(logdir).mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(logdir), flush_secs=5)

    def scalar(self, tag: str, value: Optional[float], step: int, wall_time: Optional[float] = None) -> None:
        """A point of the `tag` curve; None (not measured) writes nothing."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        if value is None:
            return
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])
        self._add(summary, step, wall_time)

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        """Text for TensorBoard's Text tab (markdown)."""
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto

        metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
        tensor = TensorProto(
            dtype="DT_STRING",
            string_val=[markdown.encode("utf-8")],
            tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
        )
        self._add(Summary(value=[Summary.Value(tag=tag, metadata=metadata, tensor=tensor)]), step, None)

    def _add(self, summary, step: int, wall_time: Optional[float]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._writer.add_event(Event(summary=summary, step=int(step), wall_time=wall_time or time.time()))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
