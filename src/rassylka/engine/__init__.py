"""The engine: the scheduler that starts runs, the dispatcher that sends their messages, and
the worker process that hosts both."""
