from gptzoo.recipes.cli import main

raise SystemExit(main())
