print("app tests ran because src/ changed")
