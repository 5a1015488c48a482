"""Operations beyond the reference protocol (explain, retry policies, schedules).

``base.py`` says what an operation is, one module per feature defines its
operations, ``table.py`` collects them and runs one for any door.
"""
