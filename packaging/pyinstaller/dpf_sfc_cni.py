"""PyInstaller entry point of the SFC CNI binary (`dpf-sfc-cni`, also installed as `dpf-ipam`)."""

import sys

from dpf.cni.shim import main

sys.exit(main())
