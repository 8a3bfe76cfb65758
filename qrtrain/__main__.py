"""python -m qrtrain --help"""

from qrtrain.cli import main

main()
