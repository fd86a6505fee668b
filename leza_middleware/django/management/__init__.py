"""Django management commands: ``manage.py leza_tail`` … (see ``base.py``)."""
