"""Prefect flows of dbops: each composes tasks and decides; nothing else."""
