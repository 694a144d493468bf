"""lmforge-serve: the server command (`server`), its API classes (`api`) and its request checks
(`checks`)."""
