from saezarr.cli import main

raise SystemExit(main())
