from launcher.runtime.job import main

raise SystemExit(main())
