"""The launcher's reading of the job's output stream (hvdat.events.Lines): every rank's lines whole, whatever mpirun
does to them. Found by the fault matrix in make test: a 6 kB eval result event from rank 0 was cut by mpirun, rank 1's
heartbeat came between the pieces, and the launcher lost the result ("the evaluation finished without a result")."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from hvdat import events


def test_pieces_of_a_long_line_are_joined_around_other_ranks_lines():
    lines = events.Lines()
    result = '@@hvdat {"event":"result","x":"' + "a" * 50 + '"}'
    head, tail = result[:20], result[20:]
    beat = '@@hvdat {"event":"beat","end":true}'
    assert lines.feed(f"[1,0]<stdout>:{head}[1,1]<stdout>:{beat}\n") == [(1, beat)]  # rank 0's piece is held
    assert lines.feed("[1,1]<stderr>:a warning\n") == [(1, "a warning")]
    assert lines.feed(f"[1,0]<stdout>:{tail}\n") == [(0, result)]
    # a piece tagged again inside the line (mpirun's 4096-byte reads of one rank), and the other stream kept apart
    assert lines.feed(f"[1,0]<stdout>:{head}[1,0]<stderr>:oops[1,0]<stdout>:{tail}\n") == [(0, result)]
    assert lines.feed("[1,0]<stderr>: again\n") == [(0, "oops again")]
    # horovodrun's Gloo prefix, and the launcher's own lines, are whole already
    assert lines.feed(f"[3]<stdout>:{result}\n") == [(3, result)]
    assert lines.feed("mpirun noticed that process rank 1 exited on signal 9\n") == [
        (None, "mpirun noticed that process rank 1 exited on signal 9")
    ]


def test_a_real_mpirun_interleaving_is_read_back_whole():
    """Real mpirun --tag-output: rank 0 writes a 30 kB line in pieces with pauses (as a slow pipe reader sees a big
    write), rank 1 a short line every 5 ms meanwhile. Every line comes back whole and in order per rank."""
    script = textwrap.dedent(
        """
        import os, sys, time
        rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
        if rank == 0:
            time.sleep(0.2)
            for k in range(6):
                os.write(1, (str(k) * 5000).encode())
                time.sleep(0.05)
            os.write(1, b"\\n")
        else:
            for k in range(120):
                os.write(1, f"beat {k}\\n".encode())
                time.sleep(0.005)
        """
    )
    argv = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", "--tag-output"]
    proc = subprocess.run([*argv, sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines, got = events.Lines(), {0: [], 1: []}
    for physical in proc.stdout.splitlines(keepends=True):
        for rank, text in lines.feed(physical):
            got[rank].append(text)
    assert got[0] == ["".join(str(k) * 5000 for k in range(6))], json.dumps(proc.stdout[:3000])
    assert got[1] == [f"beat {k}" for k in range(120)]
