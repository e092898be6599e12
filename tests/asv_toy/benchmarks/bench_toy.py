from toyproj import make_step


class TrainStep:
    number = 1
    repeat = (10, 20, 10.0)
    rounds = 2
    warmup_time = 0.0

    def setup(self):
        self.step = make_step()

    def time_train_step(self):
        self.step()
