# Debian's Prometheus 2 and promtool: the real-Prometheus tests and the rule tests.
need_apt prometheus
prometheus --version 2>&1 | head -1
