# A user's model file with a syntax error (launch reports it at submission, with the line).
class Model:
    def __init__(self) -> None
        pass
