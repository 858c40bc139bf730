#!/usr/bin/env bash
# The one prepared GPU check (see benchmarks/gpu_check.py for the steps, their time limits and
# the exit statuses):  bash benchmarks/gpu_check.sh OUT
# The Python that runs it (and every step) is $PYTHON, else python3.
here=${BASH_SOURCE[0]%/*}
[ "$here" = "${BASH_SOURCE[0]}" ] && here=.
exec "${PYTHON:-python3}" "$here/gpu_check.py" "$@"
