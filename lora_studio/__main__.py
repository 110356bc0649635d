from lora_studio.cli import main

raise SystemExit(main())
