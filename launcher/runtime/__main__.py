from launcher.runtime.rank import main

raise SystemExit(main())
