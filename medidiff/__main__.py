from medidiff.cli import main

raise SystemExit(main())
