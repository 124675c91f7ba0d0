from archc.cli import main

main(prog_name="archc")
