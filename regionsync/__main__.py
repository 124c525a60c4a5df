from regionsync.cli import main

raise SystemExit(main())
