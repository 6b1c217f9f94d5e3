from aitask.cli import main

raise SystemExit(main())
