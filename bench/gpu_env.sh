# Source this on a machine where tl_jax cannot be pip-installed (no network, e.g. the lent GPU
# machine): it installs the wheels carried in .whl/ (e.g. tensorboardX) into /tmp/site and puts
# a `tl-jax` command for this checkout on PATH.   . bench/gpu_env.sh
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
mkdir -p /tmp/bin
printf '#!/bin/sh\nexec python3 -m tl_jax.cli "$@"\n' > /tmp/bin/tl-jax && chmod +x /tmp/bin/tl-jax
export PATH="/tmp/bin:$PATH" PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
