"""The offline Azure-readiness check (`azbuild check`), one module a job:

- `check.py`: `run_check`, the report of R01..R15 in requirement order;
- `image.py`: R01 and R02 from the image's bytes (`format_checks`, `verify_vhd`);
- `guest_checks.py`: R03..R15 from one libguestfs launch (`guest_checks`);
- `disklabel.py`: partition tables and ext superblocks, read raw;
- `parsers.py`: the guest's text files parsed; `judge.py`: the pure judgements;
- `adapter.py`: the libguestfs adapter; `facts.py`: what is read before judging;
- `rules_disk.py`, `rules_kernel.py`, `rules_system.py`: one check per requirement;
- `units.py`: systemd unit files and their ordering questions (R15).

What is required comes from builder/requirements.py. This file imports nothing: its
modules import each other, and a package that loaded them would sit in their cycle.
"""
