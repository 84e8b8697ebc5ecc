from vqaudio.cli import main

main()
