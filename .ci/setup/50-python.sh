# The project's venv with the test extra (the README's second command does the same).
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
# The suite runs here on the newest aiohttp release and in .venv-lowest (55-lowest.sh) on the
# floor: exporter/clients/transport.py and exporter/web/listener.py hook below aiohttp's public
# API, so a release that breaks a hook must fail CI the day it lands, not in a user's fleet.
aiohttp_newest=$(.venv/bin/pip index versions aiohttp 2>/dev/null | sed -n 's/^aiohttp (\(.*\))$/\1/p')
if [ -n "$aiohttp_newest" ]; then
    .venv/bin/pip install -q "aiohttp==$aiohttp_newest"
fi
echo "aiohttp $(.venv/bin/python -c 'import aiohttp; print(aiohttp.__version__)') (newest on PyPI: ${aiohttp_newest:-unknown})"
