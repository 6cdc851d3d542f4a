from nija.cli import main

raise SystemExit(main())
