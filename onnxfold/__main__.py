from onnxfold.cli import main

raise SystemExit(main())
