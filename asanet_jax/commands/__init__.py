"""The command-line programs: installed as console scripts (``asanet-train``,
``asanet-eval``, ``asanet-predict``, ``asanet-convert``, ``asanet-export``,
``asanet-build-dataset``) and run by ``scripts/*.py`` as well.

Each module's first statement installs the Ctrl-C handler (``interrupts.hold``), before
its heavy imports, and its ``run()`` is the entry point: flags, then one library call.
"""
