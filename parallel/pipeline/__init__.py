"""Pipeline parallelism: schedules as tick tables (``schedule.py``). Knows no models."""
from parallel.pipeline.schedule import (BWD, FWD, IDLE, SCHEDULES, Schedule, ScheduleError, bubble_formula,
                                        bubble_ratio, build, check, render)

__all__ = ["BWD", "FWD", "IDLE", "SCHEDULES", "Schedule", "ScheduleError", "bubble_formula", "bubble_ratio",
           "build", "check", "render"]
