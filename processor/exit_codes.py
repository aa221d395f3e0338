"""Process exit codes, for supervisors (systemd, Kubernetes) and the runbook.

Everything but 0 means "restart me", except 2, which a restart cannot fix.
"""

OK = 0
CONFIG_ERROR = 2  # a bad environment variable or argument; fix the configuration
SHUTDOWN_BUDGET_EXCEEDED = 3  # drain did not finish inside SHUTDOWN_BUDGET_S; work left pending
PANIC = 70  # an unexpected error crashed the tree; a panic dump was written (EX_SOFTWARE)
INTERRUPTED = 130  # a second SIGINT during shutdown: exited at once
FAILED = 1  # operator command: a named entry does not exist, or Redis refused the command
UNAVAILABLE = 69  # operator command: Redis or PostgreSQL cannot be reached (EX_UNAVAILABLE)
