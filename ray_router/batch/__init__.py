"""Offline batch routing: query input, the queue, the Ray Data job and its summary."""
