"""No models: Conveyor's tables are created by its own migrations (run after Django's
``migrate``, see :mod:`conveyor.contrib.django.apps`). This module makes Django send this app
the ``post_migrate`` signal."""
