"""A tick's planning: evaluate segments and stages in the database, find who changed, and plan each
program's actions (``planner``), for the customers that may have changed (``incremental``)."""
