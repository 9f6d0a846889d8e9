from .cli import program

# Guarded: a spawned worker process (compile --jobs) imports this module again.
if __name__ == "__main__":
    program()
