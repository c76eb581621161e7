"""A tick's planning: the records a plan is made of (``records``), the evaluation of segments and stages
in the database and who changed (``evaluate``), the planner (``planner``, with its checks in ``guards``
and its recurring rules in ``recurring``), the second PostgreSQL connection (``alongside``), the
customers that may have changed (``incremental``) and the time helpers they share (``timeutil``)."""
