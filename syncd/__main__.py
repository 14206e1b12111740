from syncd.cli.core import main

raise SystemExit(main())
